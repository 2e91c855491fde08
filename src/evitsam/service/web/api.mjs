// The server's API: one place that adds the token and turns every failure into one readable sentence.

const token = new URLSearchParams(location.hash.slice(1)).get("token") || sessionStorage.getItem("evitsam-token");
if (token) sessionStorage.setItem("evitsam-token", token);

export class ApiError extends Error {}

export async function request(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new ApiError("The server cannot be reached: is evitsam serve still running?");
  }
  if (!response.ok) {
    let message = `the server answered ${response.status}`;
    try {
      const body = await response.json();
      if (body.error) message = `${body.error.field}: ${body.error.message}`;
    } catch {
      /* not JSON: keep the status */
    }
    throw new ApiError(message.charAt(0).toUpperCase() + message.slice(1) + ".");
  }
  return response;
}

export async function getJson(path) {
  return (await request(path)).json();
}

export async function postJson(path, body) {
  return (await request(path, { method: "POST", json: body })).json();
}
