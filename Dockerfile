# syntax=docker/dockerfile:1
# cnnvis in a container. Default target: GPU (CUDA 13 + cuDNN 9, onnxruntime-gpu 1.31.1,
# whose CUDA provider links libcublas.so.13 / libcudart.so.13). `--target cpu` builds the
# CPU image on a plain Python base.
ARG PYTHON_VERSION=3.12

# ---- wheels: build the project once, for either runtime ----------------------------------
FROM python:${PYTHON_VERSION}-slim AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY schemas ./schemas
COPY models_store ./models_store
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- the default model store, exported once with torch (not shipped in the runtime) -------
FROM python:${PYTHON_VERSION}-slim AS store
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[zoo]" \
      --extra-index-url https://download.pytorch.org/whl/cpu \
 && cnnvis --store /store zoo add efficientnet-lite0

# ---- CPU runtime -------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS cpu
RUN useradd --create-home --uid 10001 cnnvis
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY --from=store --chown=cnnvis /store /store
USER cnnvis
ENV CNNVIS_STORE=/store CNNVIS_PROVIDERS='["CPUExecutionProvider"]'
EXPOSE 8000
VOLUME ["/store"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["cnnvis"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]

# ---- GPU runtime (default) ---------------------------------------------------------------
FROM nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04 AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_BREAK_SYSTEM_PACKAGES=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 cnnvis
COPY --from=wheels /wheels /wheels
# onnxruntime (CPU) and onnxruntime-gpu share one import package: keep only the GPU build
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[gpu]" && rm -rf /wheels \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --force-reinstall --no-deps onnxruntime-gpu==1.31.1 \
 && python3 -c "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"
COPY --from=store --chown=cnnvis /store /store
USER cnnvis
ENV CNNVIS_STORE=/store
EXPOSE 8000
VOLUME ["/store"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"
ENTRYPOINT ["cnnvis"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
