//! Evaluation metrics: family classification and residue-residue contacts.

pub mod classification;
pub mod contact;
