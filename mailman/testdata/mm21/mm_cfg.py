# Site configuration of a Mailman 2.1 installation.
from Defaults import *

DEFAULT_URL_HOST   = 'lists.example.org'
DEFAULT_EMAIL_HOST = 'lists.example.org'

# Four outgoing qrunners instead of one.
QRUNNERS.remove(('OutgoingRunner', 1))
QRUNNERS.append(('OutgoingRunner', 4))
QRUNNERS.append(('MaildirRunner', 1))
if os.path.exists('/etc/mailman/extra'):
    QUEUE_DIR = '/srv/mailman/qfiles'
OUTQUEUE_DIR = get_outqueue()
