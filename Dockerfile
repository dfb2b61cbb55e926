# The `exchange` image: one image for the PKI tool, the hub and the national nodes
# (docker-compose.yml picks the sub-command). Certificates and keys are never baked in:
# they are mounted at run time (see docker-compose.yml), and .dockerignore keeps certs/
# and every *.key / *.pem out of the build context.
#
#   docker build -t exchange:dev .
#   docker run --rm exchange:dev --help

# -- builder: install the package and its pinned dependencies into a virtualenv ------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependency metadata first, then the sources: the layers change with what changed.
COPY pyproject.toml constraints.txt README.md ./
COPY exchange/ exchange/
COPY nodes/ nodes/
# constraints.txt pins the versions the test suite ran with.
RUN pip install --no-cache-dir -c constraints.txt .

# -- runtime: the virtualenv, the policies, a non-root user --------------------------------
FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="exchange" \
      org.opencontainers.image.description="Secure message exchange: hub, national nodes, PKI tool" \
      org.opencontainers.image.licenses="EUPL-1.2"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EXCHANGE_POLICIES=/app/policies

# uid/gid 10001: outside the range of system and first human users on the host, so a
# bind-mounted certificate folder can be given to exactly this user (chown 10001).
# /certs and /var/lib/exchange belong to it: an empty named volume mounted there takes
# that ownership, so `pki init` can write /certs and each node its home.
RUN groupadd --system --gid 10001 exchange \
    && useradd --system --uid 10001 --gid exchange --no-create-home \
       --home-dir /var/lib/exchange --shell /usr/sbin/nologin exchange \
    && mkdir -p /certs /var/lib/exchange \
    && chown exchange:exchange /certs /var/lib/exchange

COPY --from=builder /opt/venv /opt/venv
COPY policies/ /app/policies/

WORKDIR /app
USER exchange:exchange

EXPOSE 7443
ENTRYPOINT ["exchange"]
CMD ["--help"]
