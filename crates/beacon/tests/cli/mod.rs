mod bench;
mod chaos;
mod crash;
mod process;
mod replay;
mod simulate;
mod up;
