mod bench;
mod chaos;
mod crash;
mod process;
mod simulate;
mod up;
