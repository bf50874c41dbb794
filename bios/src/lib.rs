//! The firmware image.
