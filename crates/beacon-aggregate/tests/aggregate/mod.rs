mod fencing;
mod retention;
mod support;
mod truth;
