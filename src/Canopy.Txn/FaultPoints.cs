namespace Canopy.Txn;

/// <summary>
/// Fault-injection points of the transaction protocol (coordinator and replica side). Production never installs a
/// handler, so a point costs one null check. Tests install one to crash (throw <see cref="InjectedCrash"/>), stall or
/// observe a coordinator or replica between any two protocol steps. Point names: "coordinator.&lt;step&gt;" and
/// "replica.&lt;mode or method&gt;.before-propose"; see docs/transactions.md for the list.
/// </summary>
public static class FaultPoints
{
    private static volatile Func<string, Task>? _handler;

    /// <summary>True when a handler is installed.</summary>
    public static bool Active => _handler is not null;

    /// <summary>Installs <paramref name="handler"/> (null removes it). Process-wide: tests using it run alone.</summary>
    public static void Install(Func<string, Task>? handler) => _handler = handler;

    /// <summary>Reached point <paramref name="point"/>.</summary>
    public static Task HitAsync(string point) => _handler?.Invoke(point) ?? Task.CompletedTask;
}

/// <summary>Thrown by a fault handler to make a coordinator stop dead at a point (as if its process died there).</summary>
public sealed class InjectedCrash(string point) : Exception($"injected crash at {point}")
{
    public string Point { get; } = point;
}
