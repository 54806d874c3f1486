//! pigeond
