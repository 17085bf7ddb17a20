"""What the tests and the benchmarks both run against, kept apart so that neither imports the other: the loopback
protocol servers (moto's S3, a Nomic API), generated images and the dev sets. Not installed with the package."""
