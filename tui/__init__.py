"""The Textual browser for sae-atlas files. Imports atlas and textual, never torch."""
