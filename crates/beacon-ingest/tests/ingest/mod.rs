mod collector;
mod normalizer;
mod provisioning;
mod server;
mod support;
