"""The production packaging run for real: ops/Dockerfile built and docker-compose.yml brought
up on podman, with base images made locally and kept between runs (marker `containers`)."""
