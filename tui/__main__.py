from tui.cli import browse

browse(prog_name="sae-atlas browse")
