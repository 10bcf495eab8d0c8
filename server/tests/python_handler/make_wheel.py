"""Writes tinydep-0.1-py3-none-any.whl, a wheel of one module, into the folder given (pip installs it offline)."""
import sys
import zipfile

files = {
    "tinydep/__init__.py": "VALUE = 'from tinydep'\n",
    "tinydep-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinydep\nVersion: 0.1\n",
    "tinydep-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = "".join(f"{name},,\n" for name in files) + "tinydep-0.1.dist-info/RECORD,,\n"
with zipfile.ZipFile(f"{sys.argv[1]}/tinydep-0.1-py3-none-any.whl", "w") as wheel:
    for name, text in files.items():
        wheel.writestr(name, text)
    wheel.writestr("tinydep-0.1.dist-info/RECORD", record)
