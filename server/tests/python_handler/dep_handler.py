"""A function entry point (the module's `handle`, TorchServe's default) that needs a package from the archive's requirements."""
import tinydep


def handle(data, context):
    if data is None:  # TorchServe's initialize call
        return None
    return [tinydep.VALUE for _ in data]
