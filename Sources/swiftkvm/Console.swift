import Foundation
import Glibc

/// The terminal's settings before raw mode, for the signal handler that
/// restores them: a handler can reach only globals.
nonisolated(unsafe) private var savedTerminal: termios?

/// Restores the terminal, then dies of the signal as the default action would.
private func restoreTerminalAndDie(_ signal: Int32) {
    if var settings = savedTerminal { tcsetattr(STDIN_FILENO, TCSANOW, &settings) }
    Glibc.signal(signal, SIG_DFL)
    raise(signal)
}

/// The guest's serial console on the host's standard input and output. On a
/// terminal: raw mode (keys go to the guest as typed, Ctrl-C included),
/// restored on every way out (`restore()`, exit, SIGTERM, SIGHUP, SIGQUIT),
/// and QEMU's escape: Ctrl-A x quits, Ctrl-A Ctrl-A sends Ctrl-A. Otherwise
/// bytes pass through unchanged, and the end of input only ends input.
final class Console: @unchecked Sendable {
    static let escape: UInt8 = 0x01  // Ctrl-A
    static let quitKey = UInt8(ascii: "x")

    let isTerminal: Bool
    private let wake: (read: Int32, write: Int32)
    private let ended = DispatchSemaphore(value: 0)
    private var reading = false

    init() throws {
        isTerminal = isatty(STDIN_FILENO) == 1 && isatty(STDOUT_FILENO) == 1
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            throw ConsoleError(message: "cannot create the console's wake-up pipe: \(String(cString: strerror(errno)))")
        }
        wake = (fds[0], fds[1])
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        if isTerminal { try enterRawMode() }
    }

    deinit {
        restore()
        close(wake.read)
        close(wake.write)
    }

    private func enterRawMode() throws {
        var settings = termios()
        guard tcgetattr(STDIN_FILENO, &settings) == 0 else {
            throw ConsoleError(message: "cannot read the terminal's settings: \(String(cString: strerror(errno)))")
        }
        savedTerminal = settings
        atexit {
            if var settings = savedTerminal { tcsetattr(STDIN_FILENO, TCSANOW, &settings) }
        }
        for signal in [SIGTERM, SIGHUP, SIGQUIT] { Glibc.signal(signal, restoreTerminalAndDie) }
        cfmakeraw(&settings)
        // Keep output processing: the guest's "\n" still starts a new line
        // wherever its tty does not add the "\r" itself.
        settings.c_oflag |= tcflag_t(OPOST)
        guard tcsetattr(STDIN_FILENO, TCSANOW, &settings) == 0 else {
            savedTerminal = nil
            throw ConsoleError(message: "cannot put the terminal in raw mode: \(String(cString: strerror(errno)))")
        }
    }

    /// Puts the terminal back as it was. Safe to call more than once.
    func restore() {
        if var settings = savedTerminal {
            tcsetattr(STDIN_FILENO, TCSANOW, &settings)
            savedTerminal = nil
        }
    }

    /// Writes a byte of guest output.
    static func output(_ byte: UInt8) {
        var byte = byte
        while write(STDOUT_FILENO, &byte, 1) < 0 && errno == EINTR {}
    }

    /// Reads standard input on its own thread until `stop()`: bytes go to
    /// `input`, Ctrl-A x (on a terminal) calls `quit`.
    func start(input: @escaping @Sendable ([UInt8]) -> Void, quit: @escaping @Sendable () -> Void) {
        reading = true
        let thread = Thread { [self] in
            readLoop(input: input, quit: quit)
            ended.signal()
        }
        thread.name = "console input"
        thread.start()
    }

    /// Ends the input thread and waits for it.
    func stop() {
        guard reading else { return }
        reading = false
        var byte: UInt8 = 0
        _ = write(wake.write, &byte, 1)
        ended.wait()
    }

    private func readLoop(input: ([UInt8]) -> Void, quit: () -> Void) {
        var buffer = [UInt8](repeating: 0, count: 256)
        var afterEscape = false
        var inputOpen = true
        while true {
            var fds = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)]
            if inputOpen { fds.append(pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0)) }
            guard poll(&fds, nfds_t(fds.count), -1) >= 0 || errno == EINTR else { return }
            if fds[0].revents != 0 { return }
            guard inputOpen, fds[1].revents != 0 else { continue }
            let count = read(STDIN_FILENO, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else {
                inputOpen = false  // end of input: the guest keeps running
                continue
            }
            guard isTerminal else {
                input(Array(buffer[..<count]))
                continue
            }
            var bytes: [UInt8] = []
            for byte in buffer[..<count] {
                if afterEscape {
                    afterEscape = false
                    if byte == Self.quitKey {
                        quit()
                        return
                    }
                    if byte == Self.escape { bytes.append(byte) }
                } else if byte == Self.escape {
                    afterEscape = true
                } else {
                    bytes.append(byte)
                }
            }
            if !bytes.isEmpty { input(bytes) }
        }
    }
}

struct ConsoleError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
