from setuptools import find_packages, setup

setup(
    name="bndl-like",
    version="0.1.0",
    description="Run DAG jobs of interdependent tasks on a cluster of Python worker processes",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["bndl_like", "bndl_like.*"]),
    package_data={"bndl_like": ["py.typed"]},  # the package ships its type hints (PEP 561)
    python_requires=">=3.10",
    install_requires=[
        "aiohttp>=3.9",
        "cloudpickle>=2.1",  # code sent by value keeps its file name (bndl_like/rmi/code_location.py)
        "sortedcontainers>=2.4",
        "yappi>=1.4",
        "numpy>=1.22",
        "tqdm>=4.60",
        "cryptography>=41",
    ],
    extras_require={
        "test": [
            "pytest>=7.4",
            "pytest-asyncio>=0.23",
            "pytest-timeout>=2.2",
            "hypothesis>=6.80",
            "ruff>=0.4",
            "mypy>=1.8",  # run by .ci/run: [tool.mypy] in pyproject.toml
            "nbclient>=0.7",
            "nbformat>=5.1",
            "ipykernel>=6.0",
            "ipywidgets>=8.0",
            "threadpoolctl>=3.1",  # the workers' BLAS threads, in the tests
        ],
        # progress bars as widgets in Jupyter (without it tqdm falls back to text)
        "notebook": ["ipykernel>=6.0", "ipywidgets>=8.0"],
        "bench": [
            "uvloop>=0.19; platform_system != 'Windows'",
            "dask[distributed]>=2024.1",
        ],
    },
    entry_points={"console_scripts": ["bndl-like = bndl_like.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: AsyncIO",
        "Topic :: System :: Distributed Computing",
    ],
)
