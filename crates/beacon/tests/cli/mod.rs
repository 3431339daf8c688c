mod bench;
mod chaos;
mod crash;
mod local_server;
mod process;
mod simulate;
mod up;
