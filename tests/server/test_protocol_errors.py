"""What the server says before any handler runs, over a real socket: requests aiohttp cannot parse (an oversized
header that might be a key or an IIN) answer problem+json that quotes nothing, and no response names versions."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import migrate_from_template
from tests.server.test_real_server import free_port, running_server, server_env, wait_for

SECRET = "900101300017"  # an IIN a hostile or broken client puts in a header


def oversized_header() -> bytes:
    return (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Patient: " + SECRET.encode() * 1000 + b"\r\n\r\n")


async def raw_exchange(host: str, port: int, request: bytes) -> tuple[str, dict, bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return lines[0], headers, body


def assert_problem_without_echo(status_line: str, headers: dict, body: bytes) -> None:
    assert " 400 " in status_line
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 400 and problem["code"] == "bad_request" and problem["detail"]
    assert SECRET.encode() not in body and b"9001013" not in body
    assert "aiohttp" not in headers.get("server", "") and "Python" not in headers.get("server", "")
    assert headers.get("cache-control") == "no-store"


async def test_an_unparsable_request_is_a_problem_that_quotes_nothing(client, capsys):
    server = client.server
    assert_problem_without_echo(*await raw_exchange(server.host, server.port, oversized_header()))
    bad_token = b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad " + SECRET.encode() + b": 1\r\n\r\n"
    assert_problem_without_echo(*await raw_exchange(server.host, server.port, bad_token))
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err  # nor in the logs


@pytest.mark.slow  # python -m server as a process
async def test_the_real_server_names_no_versions_and_refuses_oversized_headers_as_problems(tmp_path):
    port = free_port()
    env = server_env(tmp_path, RASTAU_SERVER_PORT=str(port))
    await migrate_from_template(env["RASTAU_DATABASE_URL"])  # as `rastau migrate` would
    async with running_server(env, tmp_path) as ended:
        async with aiohttp.ClientSession() as session:
            await wait_for(session, f"http://127.0.0.1:{port}/healthz", 200, 120)
            async with session.get(f"http://127.0.0.1:{port}/api/v1/visits/1") as response:
                assert response.status == 401
                assert "aiohttp" not in response.headers.get("Server", "")
                assert "Python" not in response.headers.get("Server", "")
                assert response.headers["Cache-Control"] == "no-store"
            async with session.head(f"http://127.0.0.1:{port}/healthz") as response:
                assert response.status == 405 and response.headers["Allow"] == "GET"
        assert_problem_without_echo(*await raw_exchange("127.0.0.1", port, oversized_header()))
    assert ended.returncode == 0, ended.err[-3000:]
    assert SECRET not in ended.out + ended.err, "echoed into the logs"
