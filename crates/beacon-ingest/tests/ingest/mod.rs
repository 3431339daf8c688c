mod collector;
mod compat;
mod hardening;
mod normalizer;
mod provisioning;
mod sdk;
mod server;
mod support;
