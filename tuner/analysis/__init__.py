"""Pure functions over stored trials and studies."""
