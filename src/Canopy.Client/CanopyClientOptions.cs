using Canopy.Rpc;

namespace Canopy.Client;

/// <summary>Timeouts and retry settings of a <see cref="CanopyClient"/>.</summary>
public sealed record CanopyClientOptions
{
    /// <summary>Time allowed to open a connection (TCP + hello) to one server, and for the first ping.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// Overall deadline of one call, retries included (for a scan: of each page). When it passes the call throws
    /// <see cref="CanopyUnavailableException"/> naming the last error.
    /// </summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Longest wait for the answer of one attempt at one server before trying another (a hung server must not eat
    /// the whole <see cref="RequestTimeout"/>).
    /// </summary>
    public TimeSpan AttemptTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long a server that failed (connection refused or lost, no answer) is avoided.</summary>
    public TimeSpan SuspectDuration { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>First backoff after a retryable error (Unavailable, no usable leaseholder hint); doubles each time.</summary>
    public TimeSpan MinBackoff { get; init; } = TimeSpan.FromMilliseconds(20);

    /// <summary>Largest backoff.</summary>
    public TimeSpan MaxBackoff { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Rows asked per scan request (a scan pages through each range with requests of at most this many rows).</summary>
    public int ScanPageSize { get; init; } = 1000;

    /// <summary>
    /// For a client inside a server: that server's own address, whose requests <see cref="LocalHandler"/> serves in
    /// process (no socket, no injected delay).
    /// </summary>
    public string? LocalAddress { get; init; }

    /// <summary>Serves requests addressed to <see cref="LocalAddress"/> in process.</summary>
    public Func<RpcRequest, CancellationToken, Task<RpcResponse>>? LocalHandler { get; init; }

    /// <summary>Delay added before each request and after each response over the network (benchmarks: a WAN-like
    /// one-way delay on every message between servers). Zero in production.</summary>
    public TimeSpan InjectedDelay { get; init; }

    internal void Validate()
    {
        Positive(ConnectTimeout, nameof(ConnectTimeout));
        Positive(RequestTimeout, nameof(RequestTimeout));
        Positive(AttemptTimeout, nameof(AttemptTimeout));
        Positive(MinBackoff, nameof(MinBackoff));
        if (SuspectDuration < TimeSpan.Zero)
        {
            throw new ArgumentException($"{nameof(SuspectDuration)} must not be negative");
        }

        if (MaxBackoff < MinBackoff)
        {
            throw new ArgumentException($"{nameof(MaxBackoff)} must be at least {nameof(MinBackoff)}");
        }

        if (ScanPageSize < 1)
        {
            throw new ArgumentException($"{nameof(ScanPageSize)} must be at least 1");
        }
    }

    private static void Positive(TimeSpan value, string name)
    {
        if (value <= TimeSpan.Zero)
        {
            throw new ArgumentException($"{name} must be positive");
        }
    }
}
