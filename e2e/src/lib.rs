//! Support for the end-to-end tests: start `crius serve`, connect, check for leaks.
#![deny(unsafe_code)]
