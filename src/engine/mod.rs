//! Everything that touches burn.
