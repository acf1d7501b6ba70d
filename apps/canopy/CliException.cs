namespace Canopy.Cli;

/// <summary>
/// A user error detected by a command (bad input, a combination of options that makes no sense, ...).
/// The CLI prints only <c>canopy: message</c> on stderr and exits with <see cref="ExitCode"/>; no stack trace.
/// </summary>
public sealed class CliException : Exception
{
    public CliException()
        : this("command failed")
    {
    }

    public CliException(string message)
        : this(message, ExitCodes.Failure)
    {
    }

    public CliException(string message, Exception innerException)
        : base(message, innerException)
    {
        ExitCode = ExitCodes.Failure;
    }

    public CliException(string message, int exitCode)
        : base(message)
    {
        ExitCode = exitCode;
    }

    /// <summary>The process exit code, never 0.</summary>
    public int ExitCode { get; }

    /// <summary>A usage error (wrong options or arguments): exit code <see cref="ExitCodes.Usage"/>.</summary>
    public static CliException Usage(string message) => new(message, ExitCodes.Usage);
}

/// <summary>Exit codes of the canopy command.</summary>
public static class ExitCodes
{
    public const int Success = 0;

    /// <summary>The command ran and failed (an error, or a simulation found violations).</summary>
    public const int Failure = 1;

    /// <summary>The command line was wrong: unknown command or option, bad value.</summary>
    public const int Usage = 2;

    /// <summary>Interrupted (Ctrl+C / SIGTERM).</summary>
    public const int Interrupted = 130;
}
