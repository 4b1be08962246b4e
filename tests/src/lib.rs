//! Shared harness for the privileged end-to-end tests.
