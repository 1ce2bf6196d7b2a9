# The harness as an image: the same `medianest-load` entry point, run as a non-root user.
#   docker build -t medianest-load .
#   docker run --rm --network host medianest-load run smoke --host http://127.0.0.1:8080 --out /results
#   docker run --rm medianest-load worker --master MASTER_HOST:5557
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 MPLBACKEND=Agg
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin medianest \
    && mkdir /results && chown medianest /results
WORKDIR /opt/medianest-load
# the harness reads scenarios/, slo/ and target_profiles/ from its clone: install it editable in place
COPY pyproject.toml README.md ./
COPY medianest_load ./medianest_load
COPY locustfiles ./locustfiles
COPY analysis ./analysis
COPY reference_target ./reference_target
COPY scenarios ./scenarios
COPY slo ./slo
COPY target_profiles ./target_profiles
RUN pip install -e . && chown -R medianest /opt/medianest-load

USER 10001
EXPOSE 5557
VOLUME ["/results"]
ENTRYPOINT ["medianest-load"]
CMD ["--help"]
