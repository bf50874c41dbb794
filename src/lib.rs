//! vireo: machine assembly and command line.
