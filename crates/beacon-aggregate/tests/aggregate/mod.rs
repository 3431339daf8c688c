mod fencing;
mod restart;
mod retention;
mod support;
mod truth;
