"""Which proxy a URL goes through, read from the environment as curl reads it: the scheme's
own variable (lower case first), then ALL_PROXY (lower case first); an empty one is unset;
NO_PROXY exempts hosts, a leading dot being a domain suffix of names, never part of an IP."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from blobdl import Settings
from blobdl.http._routes import ProxyRoutes

P1, P2, P3, P4 = (f"http://proxy{n}:3128" for n in range(1, 5))


def routes(proxy: str | None = None, *, trust_env: bool = True, **environ: str) -> ProxyRoutes:
    """The routes of ``Settings(proxy=..., trust_env=...)`` in an environment of ``environ``."""
    return ProxyRoutes.from_settings(Settings(proxy=proxy, trust_env=trust_env), environ)


@pytest.mark.parametrize(
    ("environ", "url", "proxy", "variable"),
    [
        ({"all_proxy": P1}, "http://h/x", P1, "$all_proxy"),
        ({"ALL_PROXY": P1}, "https://h/x", P1, "$ALL_PROXY"),
        ({"all_proxy": P1, "ALL_PROXY": P2}, "https://h/x", P1, "$all_proxy"),
        ({"https_proxy": P1, "ALL_PROXY": P2}, "https://h/x", P1, "$https_proxy"),
        ({"https_proxy": P1, "ALL_PROXY": P2}, "http://h/x", P2, "$ALL_PROXY"),
        ({"http_proxy": P1, "HTTP_PROXY": P2}, "http://h/x", P1, "$http_proxy"),
        ({"HTTP_PROXY": P2}, "http://h/x", P2, "$HTTP_PROXY"),
        ({"https_proxy": P3, "HTTPS_PROXY": P4}, "https://h/x", P3, "$https_proxy"),
        ({"HTTPS_PROXY": P4, "all_proxy": P1}, "https://h/x", P4, "$HTTPS_PROXY"),
        ({"http_proxy": "", "ALL_PROXY": P2}, "http://h/x", P2, "$ALL_PROXY"),  # empty: unset
        ({"ALL_PROXY": "proxy1:3128"}, "http://h/x", P1, "$ALL_PROXY"),  # no scheme: http
        # A CGI script's HTTP_PROXY may come from a request's "Proxy:" header (httpoxy).
        (
            {"HTTP_PROXY": P2, "REQUEST_METHOD": "GET", "all_proxy": P1},
            "http://h/x",
            P1,
            "$all_proxy",
        ),
    ],
)
def test_the_proxy_and_the_variable_it_came_from(
    environ: dict[str, str], url: str, proxy: str, variable: str
) -> None:
    found = routes(**environ)
    assert found.configured()
    assert found.proxy_for(url) == proxy
    assert found.origin(url) == variable


def test_no_variable_no_proxy() -> None:
    found = routes(all_proxy="", NO_PROXY="*")
    assert not found.configured()
    assert found.proxy_for("http://h/x") is None


def test_the_proxy_setting_is_named_as_the_setting() -> None:
    found = routes(P1, ALL_PROXY=P2)
    assert (found.proxy_for("https://h/x"), found.origin("https://h/x")) == (P1, "")


@pytest.mark.parametrize("given", ["proxy1:3128", "http://proxy1:3128"])
def test_a_proxy_setting_without_a_scheme_is_http_as_a_variables_is(given: str) -> None:
    assert routes(given).proxy_for("https://h/x") == P1
    assert routes(ALL_PROXY=given).proxy_for("https://h/x") == P1


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        # IP hosts: only the exact address. A leading dot is a domain suffix, never a
        # partial IP (Python's matcher read ".0.0.1" as a suffix of 127.0.0.1).
        (".0.0.1", "http://127.0.0.1/x", False),
        ("0.0.1", "http://127.0.0.1/x", False),
        ("0.1", "http://127.0.0.1:8080/x", False),
        ("127.0.0.1", "http://127.0.0.1:8080/x", True),
        (" 127.0.0.1 ", "http://127.0.0.1/x", True),
        ("127.0.0.1:8080", "http://127.0.0.1:8080/x", True),
        ("127.0.0.1:8080", "http://127.0.0.1:9/x", False),
        ("::1", "http://[::1]:8080/x", True),
        ("[::1]", "http://[::1]/x", True),
        ("0:0::1", "http://[::1]/x", True),
        ("[::1]:8080", "http://[::1]:8080/x", True),
        ("::1", "http://[::2]/x", False),
        (":1", "http://[::1]/x", False),
        ("localhost,127.0.0.1,::1", "http://[::1]/x", True),
        # A network (curl 7.86+, requests): every address in it, and no name.
        ("10.0.0.0/8", "http://10.1.2.3:8080/x", True),
        ("localhost, 10.0.0.0/8", "http://10.255.255.255/x", True),
        ("localhost,\t10.0.0.0/8", "http://10.1.2.3/x", True),  # a tab is a blank, as curl's
        ("localhost\t10.0.0.0/8", "http://10.1.2.3/x", True),
        # A line break too (a value written over lines in a YAML file or an env file), as
        # Python's own matcher reads it: a host meant to go direct never goes to the proxy.
        ("localhost,\n10.0.0.0/8", "http://10.1.2.3/x", True),
        ("localhost\r\n10.0.0.0/8\n", "http://10.1.2.3/x", True),
        ("localhost\r\n10.0.0.0/8", "http://localhost/x", True),  # a CRLF file: the CR too
        ("*\n", "http://anything/x", True),
        ("10.0.0.0/8", "http://11.0.0.1/x", False),
        ("10.0.0.1/8", "http://10.9.9.9/x", True),  # host bits set: still the /8, as curl
        ("fd00::/8", "http://[fd12::1]/x", True),
        ("fd00::/8", "http://[fe80::1]/x", False),
        ("10.0.0.0/8", "http://ten.example/x", False),
        ("10.0.0.0/40", "http://10.1.2.3/x", False),  # no network: names nothing
        # Names: the name itself and every name under it, with or without a leading dot.
        (".example.com", "http://www.example.com/x", True),
        (".example.com", "http://example.com/x", True),
        ("example.com", "http://a.b.example.com/x", True),
        ("EXAMPLE.com", "https://Example.COM/x", True),
        ("example.com", "http://notexample.com/x", False),
        ("example.com", "http://example.com.evil/x", False),
        ("example.com:443", "https://example.com/x", True),  # the scheme's port
        ("example.com:8443", "https://example.com/x", False),
        ("localhost", "http://localhost.:8080/x", True),  # a trailing dot: the same name
        ("example.com.", "http://www.example.com/x", True),  # in the entry too, as curl
        (".example.com.", "http://example.com./x", True),
        ("*", "http://anything/x", True),
        ("", "http://anything/x", False),
        ("127.0.0.1", "http://localhost/x", False),  # names are not resolved
    ],
)
def test_no_proxy_matches_as_curl_does(no_proxy: str, url: str, bypassed: bool) -> None:
    found = routes(http_proxy=P1, https_proxy=P1, NO_PROXY=no_proxy)
    assert (found.proxy_for(url) is None) is bypassed


def test_no_proxy_lower_case_first_and_for_the_proxy_setting_too() -> None:
    found = routes(P1, no_proxy="a.test", NO_PROXY="b.test")
    assert found.proxy_for("http://a.test/x") is None
    assert found.proxy_for("http://b.test/x") == P1
    found = routes(P1, no_proxy="", NO_PROXY="b.test")  # empty: unset
    assert found.proxy_for("http://b.test/x") is None
    assert routes(P1, no_proxy="b.test", trust_env=False).proxy_for("http://b.test/x") == P1


@pytest.mark.parametrize("port", ["\u00b2", "\u0668\u0660", "\uff18\uff10"])
def test_a_no_proxy_entry_whose_port_is_no_ascii_number_names_nothing(port: str) -> None:
    """str.isdigit() holds for a superscript two, which int() refuses: every download
    through a proxy ended in a traceback."""
    found = routes(P1, NO_PROXY=f"h:{port}")
    assert found.proxy_for("http://h/x") == P1
    assert found.proxy_for("http://h:80/x") == P1


def test_threads_sharing_a_router_make_one_manager_per_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pull's lookups share one router: two asking at once for a proxy's first manager
    got one each, and the one that lost was never cleared (its idle socket outlived the
    run, into forked workers). The making is slowed so that both ask while it runs."""
    from blobdl.http import _pool

    made: list[object] = []
    real = _pool.proxy_manager

    def slow(*args: Any) -> Any:
        made.append(args[0])
        time.sleep(0.2)
        return real(*args)

    monkeypatch.setattr(_pool, "proxy_manager", slow)
    settings = Settings(proxy="http://127.0.0.1:9")
    router = _pool._ProxyRouter(ProxyRoutes.from_settings(settings, {}), settings, {})
    got: list[object] = []

    def ask() -> None:
        got.append(router._manager("http://127.0.0.1:9", "http://h/a"))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1, made
    assert got[0] is got[1]
    router.clear()
