mod delivery;
mod events;
mod rules_api;
mod support;
