mod fencing;
mod restart;
mod retention;
mod sessions;
mod support;
mod truth;
