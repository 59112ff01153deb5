//! strata's builder: Dockerfile front end, build plan, instruction execution,
//! images in and out, and the `strata` command line.

pub mod build;
pub mod cache;
pub mod check;
pub mod cli;
pub mod dockerfile;
pub mod dockerignore;
pub mod exec;
pub mod image;
pub mod plan;
