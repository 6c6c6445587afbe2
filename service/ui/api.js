// The only way the explorer reaches the service: the public HTTP API, errors as problems.

export class ApiError extends Error {
  constructor(status, problem) {
    const title = problem.title || `HTTP ${status}`;
    super(problem.detail ? `${title}: ${problem.detail}` : title);
    this.status = status;
    this.problem = problem;
  }
}

function headers(extra) {
  const token = document.getElementById("token").value.trim();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : { ...extra };
}

async function problemOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && typeof body === "object") return body;
  } catch (_) { /* not JSON: show the text */ }
  return { title: `HTTP ${response.status}`, detail: text.slice(0, 500) || response.statusText };
}

async function send(method, path, { json, form, accept } = {}) {
  const init = { method, headers: headers(accept ? { Accept: accept } : {}) };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (form) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, { title: "Network error", detail: String(err.message || err) });
  }
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return response;
}

export async function getJson(path) {
  return (await send("GET", path)).json();
}

export async function postJson(path, body) {
  return (await send("POST", path, { json: body })).json();
}

// Multipart: the image as a file part, every other field in the query string (docs/api.md).
export async function postImage(path, blob, params) {
  const form = new FormData();
  form.append("image", blob, blob.name || "image");
  const query = new URLSearchParams(params).toString();
  return (await send("POST", query ? `${path}?${query}` : path, { form })).json();
}

export async function getBlob(path, accept) {
  return (await send("GET", path, { accept })).blob();
}

export async function del(path) {
  return (await send("DELETE", path)).json();
}

export const modelPath = (name) => `/v1/models/${encodeURIComponent(name)}`;

export const pngUrl = (b64) => `data:image/png;base64,${b64}`;

export function blobToBase64(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}

// A status line per panel: progress while a request runs, the problem when it fails.
export async function withStatus(element, message, work) {
  element.className = "status busy";
  element.setAttribute("aria-busy", "true");
  element.textContent = message;
  try {
    const result = await work();
    element.className = "status";
    element.textContent = "";
    return result;
  } catch (err) {
    element.className = "status error";
    element.textContent = err instanceof ApiError ? err.message : `Error: ${err.message || err}`;
    return undefined;
  } finally {
    element.removeAttribute("aria-busy");
  }
}
