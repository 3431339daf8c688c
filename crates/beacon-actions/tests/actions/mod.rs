mod delivery;
mod events;
mod rules_api;
mod signature;
mod support;
