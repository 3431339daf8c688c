mod examples;
mod http;
mod publish;
mod query;
mod subscribe;
mod support;
mod wire;
