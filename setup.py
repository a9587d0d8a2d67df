"""Packaging for entropy-appliance."""

from setuptools import find_packages, setup

setup(
    name="entropy-appliance",
    version="0.1.0",
    description="A network entropy appliance: health-tested source, CTR_DRBG, HTTP/TLS/h2, raw TCP, onion.",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    packages=find_packages(include=["entropy_appliance", "entropy_appliance.*", "entropy_fetch"])
    + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/entropy_plugin.py"],
        "entropy_appliance.web": ["static/*"],
    },
    include_package_data=True,
    install_requires=[
        # web/channel.py reaches into HTTPChannel internals: the releases it is tested with.
        "twisted[tls,http2]>=26.10,<26.11",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "klein>=24.8",
        "txtorcon>=24.8",
        "cryptography>=42",
        "prometheus_client>=0.20",
        "pillow>=10",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6.100",
            "treq>=24.9",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0",
            "playwright>=1.45",
            "schemathesis>=4.32,<5",
            # Real clients of the ANU and RANDOM.ORG compatible APIs (numpy: quantumrandom.uint16).
            "quantumrandom==1.9.0",
            "rdoclient==1.5.0",
            "numpy>=1.26",
        ],
    },
    entry_points={
        "console_scripts": [
            "entropy-fetch = entropy_fetch.cli:main",
        ],
    },
    zip_safe=False,
)
