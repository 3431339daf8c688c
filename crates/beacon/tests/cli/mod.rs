mod crash;
mod process;
mod up;
