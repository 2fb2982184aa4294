"""What every layer shares and none owns: the user-error base and bounded YAML loading."""
