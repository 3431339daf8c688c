mod fencing;
mod restart;
mod retention;
mod segments;
mod sessions;
mod stored;
mod support;
mod truth;
