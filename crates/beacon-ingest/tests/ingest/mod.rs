mod collector;
mod compat;
mod normalizer;
mod provisioning;
mod sdk;
mod server;
mod support;
