//! Fuzz request sequences against the real services over a fresh store;
//! `pigeon_fuzz::session` holds the ops, the model and the checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon_fuzz::session::{run, Ops};

fuzz_target!(|ops: Ops| run(&ops));
