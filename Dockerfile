# The OpenCAS image: `cas serve` on the simulated platform, state in the volume /var/lib/cas.
#
#     docker build -t opencas .
#     docker run --rm -p 8081:8081 -p 18765:18765 -v opencas-state:/var/lib/cas opencas
#
# For an image that provisions itself from files, see examples/self-provisioned.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

COPY pyproject.toml README.md /tmp/opencas/
COPY src /tmp/opencas/src
RUN pip install /tmp/opencas && rm -rf /tmp/opencas

RUN groupadd --system --gid 10001 cas \
    && useradd --system --uid 10001 --gid cas --home-dir /var/lib/cas --no-create-home \
       --shell /usr/sbin/nologin cas \
    && mkdir -p /var/lib/cas \
    && chown cas:cas /var/lib/cas \
    && chmod 0700 /var/lib/cas

COPY docker/availability-config.toml /etc/cas/availability-config.toml

VOLUME ["/var/lib/cas"]
WORKDIR /var/lib/cas
USER 10001:10001

# The client API and the enclave API.
EXPOSE 8081 18765

# Liveness only: the certificate is not checked here. Clients attest the CAS with casctl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import ssl, urllib.request; urllib.request.urlopen('https://127.0.0.1:8081/healthz', context=ssl._create_unverified_context(), timeout=4)"]

CMD ["cas", "-c", "/etc/cas/availability-config.toml", "serve"]
