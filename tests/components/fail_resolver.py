"""fail_resolver: a cyanprintsdk resolver whose function raises; the SDK answers
``POST /api/resolve`` with HTTP 500. Health is fine."""

from cyanprintsdk.domain.resolver.input import ResolverInput
from cyanprintsdk.domain.resolver.output import ResolverOutput
from cyanprintsdk.main import start_resolver_with_fn


async def resolve(i: ResolverInput) -> ResolverOutput:
    raise RuntimeError("fail_resolver: deliberate failure inside the resolver function")


if __name__ == "__main__":
    start_resolver_with_fn(resolve)
