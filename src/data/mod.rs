//! Data: the ESM-2 tokenizer, readers (Pfam split, FASTA, Stockholm, PDB/mmCIF, contact
//! sets), family selection, class weights, and packed batching.

pub mod batch;
pub mod rng;
pub mod tokenizer;
