import Foundation
import Testing
@testable import X86

/// 64-bit code with absolute [disp32] operands and backward JNZ, enough
/// for the loops below.
struct LoopAssembler {
    var bytes: [UInt8] = []
    var here: Int { bytes.count }

    mutating func emit(_ code: [UInt8]) { bytes += code }

    /// ModRM (mod 00, r/m 100) and SIB 25: [disp32] with no base or index.
    static func absolute(_ reg: Int, _ address: UInt32) -> [UInt8] {
        [UInt8((reg & 7) << 3 | 4), 0x25] + (0..<4).map { UInt8(truncatingIfNeeded: address >> UInt32($0 * 8)) }
    }

    static func imm32(_ value: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32($0 * 8)) } }

    mutating func jnz(_ target: Int) {
        bytes += [0x75, UInt8(bitPattern: Int8(target - (here + 2)))]
    }
}

/// A CPU and what it ended with, handed to a thread and back.
final class CPUOnThread: @unchecked Sendable {
    var cpu: X86CPU
    var exit: X86Exit = .instructionLimit
    init(_ cpu: X86CPU) { self.cpu = cpu }
}

@Suite("X86 LOCK is atomic across vCPU threads")
struct AtomicTests {
    static let iterations: UInt32 = 40_000

    /// Two CPUs over the long-mode machine's memory, each with its own
    /// stack, run `code` at the same time on two threads (released together)
    /// until HLT or `maxInstructions`.
    func runTwice(_ code: [UInt8], prepare: (Machine) -> Void = { _ in },
                  maxInstructions: Int = 10_000_000) -> (Machine, [CPUOnThread]) {
        let m = Machine(.long64, code: code + [hlt])
        prepare(m)
        var second = m.cpu
        second.state[.rsp] = 0x7000
        let cpus = [CPUOnThread(m.cpu), CPUOnThread(second)]
        let start = DispatchSemaphore(value: 0)
        let done = DispatchGroup()
        for box in cpus {
            done.enter()
            let thread = Thread {
                start.wait()
                box.exit = box.cpu.run(maxInstructions: maxInstructions)
                done.leave()
            }
            thread.start()
        }
        start.signal()
        start.signal()
        done.wait()
        return (m, cpus)
    }

    /// mov ecx, N; loop: `body`; dec ecx; jnz loop.
    func loop(_ body: [UInt8], count: UInt32 = AtomicTests.iterations) -> [UInt8] {
        var a = LoopAssembler()
        a.emit([0xB9] + LoopAssembler.imm32(count))
        let top = a.here
        a.emit(body)
        a.emit([0xFF, 0xC9])
        a.jnz(top)
        return a.bytes
    }

    @Test func lockIncFromTwoThreadsLosesNoIncrement() {
        let (m, cpus) = runTwice(loop([0xF0, 0xFF] + LoopAssembler.absolute(0, 0x3000)))  // lock inc dword [0x3000]
        #expect(cpus.map(\.exit) == [.halt, .halt])
        #expect(m.load64(0x3000) & 0xFFFF_FFFF == UInt64(2 * Self.iterations))
    }

    @Test func lockAddOnByteWordAndQuadwordLosesNothing() {
        // lock add byte [0x3000], 1; lock add word [0x3010], 1; lock add qword [0x3020], -1
        let body = [0xF0, 0x80] + LoopAssembler.absolute(0, 0x3000) + [1]
            + [0x66, 0xF0, 0x83] + LoopAssembler.absolute(0, 0x3010) + [1]
            + [0xF0, 0x48, 0x83] + LoopAssembler.absolute(0, 0x3020) + [0xFF]
        let (m, cpus) = runTwice(loop(body))
        #expect(cpus.map(\.exit) == [.halt, .halt])
        #expect(m.load8(0x3000) == UInt8(truncatingIfNeeded: 2 * Self.iterations))
        #expect(m.load64(0x3010) & 0xFFFF == UInt64(2 * Self.iterations) & 0xFFFF)
        #expect(m.load64(0x3020) == 0 &- UInt64(2 * Self.iterations))
    }

    @Test func lockXaddHandsOutEveryValueOnce() {
        // xor esi, esi; loop { mov eax, 1; lock xadd [0x3000], eax; add rsi, rax }: the
        // values handed out are 0 ..< 2N, once each, so the two sums add up to their total.
        var code: [UInt8] = [0x31, 0xF6]
        code += loop([0xB8] + LoopAssembler.imm32(1) + [0xF0, 0x0F, 0xC1] + LoopAssembler.absolute(0, 0x3000) + [0x48, 0x01, 0xC6])
        let (m, cpus) = runTwice(code)
        #expect(cpus.map(\.exit) == [.halt, .halt])
        let total = UInt64(2 * Self.iterations)
        #expect(m.load64(0x3000) & 0xFFFF_FFFF == total)
        #expect(cpus[0].cpu.state[.rsi] + cpus[1].cpu.state[.rsi] == total * (total - 1) / 2)
    }

    @Test func lockCmpxchgRetryLoopLosesNoIncrement() {
        // loop { mov eax, [0x3000]; retry: lea edx, [rax+1]; lock cmpxchg [0x3000], edx; jnz retry }
        var a = LoopAssembler()
        a.emit([0xB9] + LoopAssembler.imm32(Self.iterations))
        let top = a.here
        a.emit([0x8B] + LoopAssembler.absolute(0, 0x3000))
        let retry = a.here
        a.emit([0x8D, 0x50, 0x01, 0xF0, 0x0F, 0xB1] + LoopAssembler.absolute(2, 0x3000))
        a.jnz(retry)
        a.emit([0xFF, 0xC9])
        a.jnz(top)
        let (m, cpus) = runTwice(a.bytes)
        #expect(cpus.map(\.exit) == [.halt, .halt])
        #expect(m.load64(0x3000) & 0xFFFF_FFFF == UInt64(2 * Self.iterations))
    }

    /// Linux's spinlock pattern: acquire with LOCK CMPXCHG 0 -> 1, a plain
    /// read-modify-write of a counter inside, release with a plain store of 0.
    /// A release overwritten by the other thread's failing CMPXCHG (a read,
    /// then the old value written back) would leave the lock held by no one:
    /// both threads spin until the instruction limit. Mutual exclusion
    /// makes the count exact.
    func spinlock(lock: UInt32, counter: UInt32) -> [UInt8] {
        var a = LoopAssembler()
        a.emit([0xB9] + LoopAssembler.imm32(Self.iterations / 2))
        let acquire = a.here
        a.emit([0x31, 0xC0, 0xBA] + LoopAssembler.imm32(1))  // xor eax, eax; mov edx, 1
        a.emit([0xF0, 0x0F, 0xB1] + LoopAssembler.absolute(2, lock))  // lock cmpxchg [lock], edx
        a.jnz(acquire)
        a.emit([0x8B] + LoopAssembler.absolute(3, counter))  // mov ebx, [counter]
        a.emit([0xFF, 0xC3])  // inc ebx
        a.emit([0x89] + LoopAssembler.absolute(3, counter))  // mov [counter], ebx
        a.emit([0xC7] + LoopAssembler.absolute(0, lock) + LoopAssembler.imm32(0))  // mov dword [lock], 0
        a.emit([0xFF, 0xC9])
        a.jnz(acquire)
        return a.bytes
    }

    @Test func plainStoreReleaseIsNeverLostToLockCmpxchg() {
        let (m, cpus) = runTwice(spinlock(lock: 0x3040, counter: 0x3080))
        #expect(cpus.map(\.exit) == [.halt, .halt], "a release was lost: the lock stayed held")
        #expect(m.load64(0x3080) & 0xFFFF_FFFF == UInt64(Self.iterations))
        #expect(m.load64(0x3040) & 0xFFFF_FFFF == 0)
    }

    @Test func plainStoreReleaseSurvivesALockWordAcrossACacheLine() {
        // The lock word spans 0x30BE..<0x30C2: the process-wide lock's path.
        let (m, cpus) = runTwice(spinlock(lock: 0x30BE, counter: 0x3100))
        #expect(cpus.map(\.exit) == [.halt, .halt], "a release was lost: the lock stayed held")
        #expect(m.load64(0x3100) & 0xFFFF_FFFF == UInt64(Self.iterations))
    }

    @Test(arguments: [UInt32(0x303E), 0x3FFE])
    func lockIncAcrossACacheLineOrPageLosesNoIncrement(address: UInt32) {
        let (m, cpus) = runTwice(loop([0xF0, 0xFF] + LoopAssembler.absolute(0, address)))
        #expect(cpus.map(\.exit) == [.halt, .halt])
        #expect(m.load64(UInt64(address)) & 0xFFFF_FFFF == UInt64(2 * Self.iterations))
    }

    @Test func lockCmpxchg16bIncrementsA128BitCounterExactly() {
        // mov r8d, N; loop: rdx:rax = [0x3100]; retry: rcx:rbx = rdx:rax + 1;
        // lock cmpxchg16b [0x3100]; jnz retry; dec r8d; jnz loop
        var a = LoopAssembler()
        a.emit([0x41, 0xB8] + LoopAssembler.imm32(Self.iterations))
        let top = a.here
        a.emit([0x48, 0x8B] + LoopAssembler.absolute(0, 0x3100))
        a.emit([0x48, 0x8B] + LoopAssembler.absolute(2, 0x3108))
        let retry = a.here
        a.emit([0x48, 0x89, 0xC3, 0x48, 0x89, 0xD1, 0x48, 0x83, 0xC3, 0x01, 0x48, 0x83, 0xD1, 0x00])
        a.emit([0xF0, 0x48, 0x0F, 0xC7] + LoopAssembler.absolute(1, 0x3100))
        a.jnz(retry)
        a.emit([0x41, 0xFF, 0xC8])
        a.jnz(top)
        let start: UInt64 = 0xFFFF_FFFF_FFFF_0000
        let (m, cpus) = runTwice(a.bytes) { m in m.store64(0x3100, start) }
        #expect(cpus.map(\.exit) == [.halt, .halt])
        let sum = UInt128(start) + UInt128(2 * Self.iterations)
        #expect(m.load64(0x3100) == UInt64(truncatingIfNeeded: sum))
        #expect(m.load64(0x3108) == UInt64(truncatingIfNeeded: sum >> 64))
    }

    @Test func lockCmpxchg8bIncrementsA64BitCounterExactly() {
        // The same loop with EDX:EAX and ECX:EBX (no REX.W), the counter at 0x3004: unaligned.
        var a = LoopAssembler()
        a.emit([0x41, 0xB8] + LoopAssembler.imm32(Self.iterations))
        let top = a.here
        a.emit([0x8B] + LoopAssembler.absolute(0, 0x3004))
        a.emit([0x8B] + LoopAssembler.absolute(2, 0x3008))
        let retry = a.here
        a.emit([0x89, 0xC3, 0x89, 0xD1, 0x83, 0xC3, 0x01, 0x83, 0xD1, 0x00])
        a.emit([0xF0, 0x0F, 0xC7] + LoopAssembler.absolute(1, 0x3004))
        a.jnz(retry)
        a.emit([0x41, 0xFF, 0xC8])
        a.jnz(top)
        let start: UInt64 = 0xFFFF_0000
        let (m, cpus) = runTwice(a.bytes) { m in m.store64(0x3004, start) }
        #expect(cpus.map(\.exit) == [.halt, .halt])
        #expect(m.load64(0x3004) == start + UInt64(2 * Self.iterations))
    }

    @Test func xchgWithMemoryIsAtomicWithoutLockPrefix() {
        // A test-and-set spinlock: xchg [lock], eax with eax = 1 until it returns 0.
        var a = LoopAssembler()
        a.emit([0xB9] + LoopAssembler.imm32(Self.iterations / 2))
        let acquire = a.here
        a.emit([0xB8] + LoopAssembler.imm32(1) + [0x87] + LoopAssembler.absolute(0, 0x3040) + [0x85, 0xC0])  // test eax, eax
        a.jnz(acquire)
        a.emit([0x8B] + LoopAssembler.absolute(3, 0x3080) + [0xFF, 0xC3] + [0x89] + LoopAssembler.absolute(3, 0x3080))
        a.emit([0xC7] + LoopAssembler.absolute(0, 0x3040) + LoopAssembler.imm32(0))
        a.emit([0xFF, 0xC9])
        a.jnz(acquire)
        let (m, cpus) = runTwice(a.bytes)
        #expect(cpus.map(\.exit) == [.halt, .halt])
        #expect(m.load64(0x3080) & 0xFFFF_FFFF == UInt64(Self.iterations))
    }
}
