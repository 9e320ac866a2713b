# -*- python -*-
# An excerpt of GNU Mailman 2.1's Defaults.py (as configure writes it), with the settings that
# decide qrunners and their queue directories.
import os

def seconds(s): return s

prefix = '/usr/lib/mailman'
exec_prefix = '${prefix}'
VAR_PREFIX = '/var/lib/mailman'

# Directories
LIST_DATA_DIR   = os.path.join(VAR_PREFIX, 'lists')
LOG_DIR         = '/var/log/mailman'
LOCK_DIR        = '/var/lock/mailman'
BIN_DIR         = os.path.join(prefix, 'bin')
QUEUE_DIR       = '/var/spool/mailman'

# Queue directories
INQUEUE_DIR      = os.path.join(QUEUE_DIR, 'in')
OUTQUEUE_DIR     = os.path.join(QUEUE_DIR, 'out')
CMDQUEUE_DIR     = os.path.join(QUEUE_DIR, 'commands')
BOUNCEQUEUE_DIR  = os.path.join(QUEUE_DIR, 'bounces')
NEWSQUEUE_DIR    = os.path.join(QUEUE_DIR, 'news')
ARCHQUEUE_DIR    = os.path.join(QUEUE_DIR, 'archive')
SHUNTQUEUE_DIR   = os.path.join(QUEUE_DIR, 'shunt')
VIRGINQUEUE_DIR  = os.path.join(QUEUE_DIR, 'virgin')
BADQUEUE_DIR     = os.path.join(QUEUE_DIR, 'bad')
RETRYQUEUE_DIR   = os.path.join(QUEUE_DIR, 'retry')
MAILDIR_DIR      = os.path.join(VAR_PREFIX, 'Maildir')

# The qrunners mailmanctl starts; each is a 2-tuple (class name, slices). The slice count must be
# a power of 2.
QRUNNERS = [
    ('ArchRunner',     1), # messages for the archiver
    ('BounceRunner',   1), # for processing the qfile/bounces directory
    ('CommandRunner',  1), # commands and bounces from the outside world
    ('IncomingRunner', 1), # posts from the outside world
    ('NewsRunner',     1), # outgoing messages to the nntpd
    ('OutgoingRunner', 1), # outgoing messages to the smtpd
    ('VirginRunner',   1), # internally crafted (virgin birth) messages
    ('RetryRunner',    1), # retry temporarily failed deliveries
    ]

QRUNNER_SLEEP_TIME = seconds(1)
