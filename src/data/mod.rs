//! Data: the ESM-2 tokenizer, readers (Pfam split, FASTA, Stockholm, PDB/mmCIF, contact
//! sets), family selection, class weights, and packed batching.

pub mod batch;
pub mod batching;
pub mod class_weights;
pub mod contact_batching;
pub mod contact_io;
pub mod contacts;
pub mod dataset;
pub mod demo;
pub mod fasta;
pub mod masking;
pub mod pfam;
pub mod rng;
pub mod stats;
pub mod stockholm;
pub mod stratify;
pub mod structure;
pub mod tokenizer;
