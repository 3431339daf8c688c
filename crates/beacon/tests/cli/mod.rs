mod bench;
mod chaos;
mod cluster;
mod crash;
mod local_server;
mod process;
mod simulate;
mod up;
