mod delivery;
mod events;
mod support;
