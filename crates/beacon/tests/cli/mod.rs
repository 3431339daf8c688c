mod bench;
mod chaos;
mod cluster;
mod crash;
mod process;
mod simulate;
mod up;
