//! CNI 1.1 client.
#![deny(unsafe_code)]
