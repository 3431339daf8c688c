mod collector;
mod compat;
mod normalizer;
mod provisioning;
mod runtime;
mod sdk;
mod server;
mod support;
